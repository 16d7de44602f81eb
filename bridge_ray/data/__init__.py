"""Training data in the files verl reads: GSM8K (synthetic or real) and SFT file checks."""
from bridge_ray.data.files import SftFileCheck, check_sft_file, convert_to_messages, read_rows
from bridge_ray.data.gsm8k import convert_gsm8k, generate_synthetic

__all__ = [
    "SftFileCheck",
    "check_sft_file",
    "convert_gsm8k",
    "convert_to_messages",
    "generate_synthetic",
    "read_rows",
]
