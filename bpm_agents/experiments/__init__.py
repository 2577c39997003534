"""The paper's experiments as data, the sweep runner (local processes or Ray) and the report.

from bpm_agents.experiments import BUILTIN, run_sweep, build_report, write_report
run_sweep(BUILTIN["fig2"], "sweeps/fig2", seeds=[0, 1, 2], updates=3000, workers=2)
write_report(build_report("sweeps/fig2", BUILTIN["fig2"]), "sweeps/fig2/report")
"""

from bpm_agents.experiments.definitions import (
    BUILTIN,
    Claim,
    Condition,
    Experiment,
    ExperimentError,
    experiment_from_dict,
    get_experiment,
    load_experiment_file,
    resolve_run_config,
)
from bpm_agents.experiments.report import Report, ReportError, build_report, check_claim, write_report
from bpm_agents.experiments.runner import (
    SweepError,
    SweepResult,
    parse_seeds,
    plan_sweep,
    run_sweep,
    sweep_status,
)

__all__ = [
    "BUILTIN",
    "Claim",
    "Condition",
    "Experiment",
    "ExperimentError",
    "Report",
    "ReportError",
    "SweepError",
    "SweepResult",
    "build_report",
    "check_claim",
    "experiment_from_dict",
    "get_experiment",
    "load_experiment_file",
    "parse_seeds",
    "plan_sweep",
    "resolve_run_config",
    "run_sweep",
    "sweep_status",
    "write_report",
]
