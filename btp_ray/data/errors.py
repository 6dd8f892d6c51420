"""The error raised for any dataset problem: it names the dataset, file, row and field, and says how to fix it."""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """A dataset could not be found or parsed. The message names where, so a user can fix it."""

    def __init__(
        self,
        dataset: str,
        message: str,
        *,
        path: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        where = [f"dataset {dataset!r}"]
        if path is not None:
            where.append(f"file {str(path)!r}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}")
        self.dataset = dataset
        self.path = Path(path) if path is not None else None
        self.row = row
        self.field = field
