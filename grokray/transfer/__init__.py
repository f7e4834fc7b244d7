"""Transferability (He et al. 2026, section 5): fine-tune a trained model on new facts and test
whether they compose. The science only: the data (:mod:`grokray.transfer.data`) and the
fine-tuning (:mod:`grokray.transfer.finetune`). Fine-tuning sweeps are a sweep kind
(:mod:`grokray.sweep.kinds.finetune`); their report is the transfer map (:mod:`grokray.transfermap`).
See ``docs/transfer.md``.
"""
from grokray.transfer.data import (NEW_PAIRS, PRETTY, SPLITS, TEST_SPLITS, TRAIN_SPLITS, TRANSFER_VERSION,
                                   TransferConfig, TransferDataset, build_transfer_dataset, load_transfer_dataset,
                                   replace_transfer, resolve_count, transfer_config_from_dict, transfer_counts,
                                   transfer_hash)
from grokray.transfer.finetune import FINAL_WINDOW, MEMORIZE_ACC, finetune, prepare_finetune, transfer_summary

__all__ = ["NEW_PAIRS", "PRETTY", "SPLITS", "TEST_SPLITS", "TRAIN_SPLITS", "TRANSFER_VERSION", "TransferConfig",
           "TransferDataset", "build_transfer_dataset", "load_transfer_dataset", "replace_transfer", "resolve_count",
           "transfer_config_from_dict", "transfer_counts", "transfer_hash", "FINAL_WINDOW", "MEMORIZE_ACC",
           "finetune", "prepare_finetune", "transfer_summary"]
