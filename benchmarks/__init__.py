"""Kernel and model benchmarks for tilewright.

Modules:
    cases        kernel cases (plain torch functions) and model cases (``transformers`` configs).
    plan         the priority-ordered items of a run, with cost estimates.
    timing       GPU/CPU timers (CUDA events, warm-up, medians, L2 flush) and the run budget.
    systems      the systems compared: tilewright, eager, Inductor, vendor libraries.
    gpu_suite    ``python -m benchmarks.gpu_suite --out DIR --budget-s 480`` (``--cpu`` for CI).
    report       ``python -m benchmarks.report DIR_OR_JSON...``: Markdown table and PNG charts.
    compile_time tilewright's compile-pipeline phases on the GPT-2 test model.
"""
