"""Layer 7: runs built from the layers below. `pipeline.py` is a run (prepare → train → evaluate →
export) and the one place that dispatches to an objective's hooks; `stages.py`, `compare.py`,
`tune.py`, `estimate.py`, `init_recipe.py` and `quickstart.py` build on the pipeline and the layers below."""
