"""Parsing a program source's name, as given to ``--source-model``: ``references``, ``samples:PATH``, or several
joined by ``+`` (``references+self``, ``samples:big.jsonl+self``), where ``self`` adds the target model's own beam
samples to the same pool. Kept free of heavy imports: model-name resolution uses it."""

from __future__ import annotations

from dataclasses import dataclass

REFERENCES = "references"
SAMPLES_PREFIX = "samples:"
SELF = "self"


@dataclass(frozen=True)
class SourceSpec:
    """What a program source draws from: samples files, the dataset's reference solutions, the target itself."""

    samples_files: tuple[str, ...] = ()
    references: bool = False
    self_samples: bool = False

    @classmethod
    def parse(cls, name: str) -> SourceSpec | None:
        """The spec ``name`` describes, or None when ``name`` is not a program source (a model name)."""
        parts = [part.strip() for part in name.strip().split("+")]
        if not any(p == REFERENCES or p.startswith(SAMPLES_PREFIX) for p in parts):
            return None
        files, references, self_samples = [], False, False
        for part in parts:
            if part == REFERENCES:
                references = True
            elif part == SELF:
                self_samples = True
            elif part.startswith(SAMPLES_PREFIX) and part[len(SAMPLES_PREFIX) :].strip():
                files.append(part[len(SAMPLES_PREFIX) :].strip())
            else:
                raise ValueError(
                    f"program source {name!r}: unknown part {part!r}; combine 'references', 'samples:PATH' and "
                    "'self' with '+' (e.g. references+self)"
                )
        return cls(samples_files=tuple(files), references=references, self_samples=self_samples)


def is_program_source(name: str) -> bool:
    try:
        return SourceSpec.parse(name) is not None
    except ValueError:
        return True  # a malformed program source: resolution reports the part that is wrong
