"""Which environment variables are credentials: they never go on a command line, into a runtime_env, a record,
a log, or the environment of a cluster's daemons (every job inherits that)."""
from __future__ import annotations

# Words of an env var's name (split at "_") that make it a credential; a name ending in KEY is one too.
# Whole words, so TOKENIZERS_PARALLELISM or MAX_TOKENS are plain settings.
_SECRET_WORDS = frozenset({"TOKEN", "PAT"})  # whole words only: TOKENIZERS_PARALLELISM, NCCL_IB_PATH are not
_SECRET_PARTS = ("SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL", "APIKEY", "COOKIE")  # anywhere in the name
_SECRET_ENDS = ("TOKEN", "APIKEY", "SECRETKEY", "ACCESSKEY", "PRIVATEKEY", "AUTHKEY")  # HF_AUTHTOKEN; not NCCL_IB_PKEY


def is_secret(key: str) -> bool:
    """Whether an env var name looks like a credential (``HF_TOKEN``, ``WANDB_API_KEY``, ...).

    Example:
        >>> [is_secret(k) for k in ("HF_TOKEN", "WANDB_API_KEY", "GITHUB_PAT", "MYSECRETTHING", "DBPASSWORD",
        ...                         "HF_AUTHTOKEN", "TOKENIZERS_PARALLELISM", "NCCL_IB_PATH")]
        [True, True, True, True, True, True, False, False]
    """
    upper = key.upper()
    words = upper.split("_")
    return (bool(_SECRET_WORDS.intersection(words)) or words[-1] == "KEY" or upper.endswith(_SECRET_ENDS)
            or any(part in upper for part in _SECRET_PARTS))


def without_secrets(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` without its credentials."""
    return {k: v for k, v in environ.items() if not is_secret(k)}
