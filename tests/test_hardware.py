import subprocess
import sys
import time

from domaintune.config import TrainingConfig
from domaintune.config.runtime import busy_cores, thread_count


def test_explicit_thread_count_is_kept():
    assert thread_count(TrainingConfig(threads=3)) == 3


def test_a_spinning_process_counts_as_a_busy_core():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert busy_cores() >= 1
    finally:
        spinner.kill()
        spinner.wait()


def test_auto_threads_leave_busy_cores_alone():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        import os

        assert 1 <= thread_count(TrainingConfig()) <= max(1, len(os.sched_getaffinity(0)) - 1)
    finally:
        spinner.kill()
        spinner.wait()
