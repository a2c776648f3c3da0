"""Rate-matched recompression benchmark (§4.1, Tables 1, S2, S4; Table 3 left for simulators): ``vrpsr eval``."""
from vrpsr_plugin.evaluation.bdrate import bd_rate
from vrpsr_plugin.evaluation.metric_suite import MetricSuite
from vrpsr_plugin.evaluation.protocol import EvalConfig, Point, Protocol
from vrpsr_plugin.evaluation.run import evaluate
from vrpsr_plugin.evaluation.stats import paired_ttest

__all__ = ['EvalConfig', 'MetricSuite', 'Point', 'Protocol', 'bd_rate', 'evaluate', 'paired_ttest']
