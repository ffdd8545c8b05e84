import subprocess
import sys
import time

from domaintune.config import TrainingConfig, runtime
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


def test_cpu_description_names_the_features_that_decide_speed(monkeypatch):
    sapphire_rapids = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
    monkeypatch.setattr(runtime, "cpu_flags", lambda: sapphire_rapids)
    assert "(AVX-512, VNNI, native bf16, AMX)" in runtime.cpu_description()
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2"}))
    assert runtime.cpu_description().endswith("(AVX2, no native bf16)")
