"""Two-hop knowledge-graph data: generator (graph), augmentation (augment), tensors and cache (dataset)."""
from grokray.data.dataset import PROBES, Batch, Dataset, build_dataset, data_hash, load_dataset

__all__ = ["PROBES", "Batch", "Dataset", "build_dataset", "data_hash", "load_dataset"]
