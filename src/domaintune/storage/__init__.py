"""Layer 3 (with models/): what a run leaves on disk. `rundir.py` names every file of a run directory
and reads and writes them; `jsonl.py` is the one reader and writer of the JSON and JSONL files
domaintune writes itself."""
