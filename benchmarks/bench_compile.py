"""asv benchmarks of compile cost, each in fresh processes."""

from fastlayers.bench import measure_compile


class Compile:
    timeout = 900
    number = 1
    repeat = 1

    def track_cold_compile_all_kernels(self):
        """Every kernel, both twins, float32 and float64, into an empty NUMBA_CACHE_DIR."""
        return measure_compile(cold=True, first_calls=False)["cold_compile_all_s"]

    track_cold_compile_all_kernels.unit = "seconds"

    def track_cold_compile_all_kernels_in_two_processes(self):
        """The same, by ``warmup(processes=2)``: two processes compile at once, this one loads."""
        return measure_compile(cold=True, processes=2, first_calls=False)["cold_compile_all_s"]

    track_cold_compile_all_kernels_in_two_processes.unit = "seconds"

    def track_warm_import_and_first_calls(self):
        """A new process: import fastlayers and call all six, on-disk cache warm."""
        return measure_compile(cold=False)["warm_first_calls_s"]

    track_warm_import_and_first_calls.unit = "seconds"
