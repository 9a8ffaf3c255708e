"""Stage 1: input rows to engine requests (sampling values, LoRA adapter, chat template, token ids).

A row that cannot become a request (bad sampling values, unknown adapter, a prompt too long for
the model) becomes a ``RowError`` in its place: the row gets an error result, the run goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import JobSpec
from ..errors import RowError
from ..inputs.prompts import PromptRenderer
from ..inputs.readers import InputRow
from ..inputs.sampling import RowSampling
from ..records import LoraAdapter, Request


class RequestBuilder:
    def __init__(self, job: JobSpec, renderer: PromptRenderer, run_id: str):
        self.job, self.renderer, self.run_id = job, renderer, run_id
        self.sampling = RowSampling(job.sampling, openai=job.input.format == "openai")
        self.adapters = {name: LoraAdapter(name, str(Path(path).resolve()))
                         for name, path in job.model.lora_adapters.items()}

    def lora(self, row: dict[str, Any]) -> LoraAdapter | None:
        """The row's adapter: its lora_column, else an OpenAI body's model if it names one, else the job's."""
        spec = self.job.model
        name = row.get(spec.lora_column) if spec.lora_column else None
        if name is None and self.job.input.format == "openai" and row.get("model") in self.adapters:
            name = row["model"]
        name = name if name is not None else spec.lora
        if name is None:
            return None
        if name not in self.adapters:
            raise RowError("unknown_lora", f"LoRA adapter {name!r} is not in model.lora_adapters "
                                           f"({', '.join(self.adapters) or 'none'})")
        return self.adapters[name]

    def _settings(self, row: dict[str, Any]) -> tuple[dict[str, Any], LoraAdapter | None] | RowError:
        try:
            return self.sampling.values(row), self.lora(row)
        except RowError as e:
            return e

    def build(self, batch: int, rows: list[InputRow]) -> list[Request | RowError]:
        """One request (or the error that stops it) per row, in order; rendered as one batch."""
        settings = [self._settings(row.data) for row in rows]
        max_tokens = [s[0]["max_tokens"] if not isinstance(s, RowError) else 1 for s in settings]
        rendered = self.renderer.render_many([row.data for row in rows], max_tokens)
        out: list[Request | RowError] = []
        for pos, (s, r) in enumerate(zip(settings, rendered)):
            if isinstance(s, RowError) or isinstance(r, RowError):
                out.append(s if isinstance(s, RowError) else r)
                continue
            values, lora = s
            out.append(Request(key=f"{self.run_id}:{batch}:{pos}", batch=batch, position=pos,
                               token_ids=r.token_ids, sampling=values | {"max_tokens": r.max_tokens}, lora=lora,
                               adjustment=r.adjustment))
        return out
