"""Write measurement files (JSON + NPZ) and module lists into a (staging) directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.measurements import jsonio
from harness.measurements import npzio
from harness.measurements.atomic import staged_directory
from harness.measurements.layout import Layout
from harness.measurements.model import MeasurementSet
from harness.measurements.naming import FileName
from harness.measurements.outcome import Timings


class Encoders:
    """The JSON and NPZ encoders of one layout (build once, use for every file of that layout)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.json = jsonio.JsonEncoder(layout)
        self.npz = npzio.NpzEncoder(layout)


class SetWriter:
    """Write measurement files (JSON + NPZ) and module lists into a (staging) directory."""

    def __init__(self, directory: Path, timings: Timings | None = None) -> None:
        self.directory = directory
        self.timings = timings or Timings()
        self.written: list[str] = []

    def write(
        self,
        name: FileName,
        header: dict[str, Any],
        layout: Layout,
        values: np.ndarray,
        encoders: Encoders | None = None,
    ) -> None:
        """Write one rank as ``.json`` and ``.npz``; ``encoders`` of the layout share work."""
        with self.timings.phase("encode"):
            if encoders is None or encoders.layout != layout:
                encoders = Encoders(layout)
            text = encoders.json.encode(header, values)
            chunks = encoders.npz.stream(header, values)
        self.write_encoded(name, text, chunks)

    def write_encoded(self, name: FileName, text: bytes, chunks: list[bytes | bytearray]) -> None:
        """Write one rank from its encoded JSON text and NPZ member chunks."""
        with self.timings.phase("write"):
            json_name = name.with_ext("json").name
            (self.directory / json_name).write_bytes(text)
            npz_name = name.with_ext("npz").name
            npzio.write_chunks(self.directory / npz_name, chunks)
        self.written += [json_name, npz_name]

    def write_mod_list(self, name: FileName, names: list[str]) -> None:
        with self.timings.phase("encode"):
            text = jsonio.encode_list(names)
        with self.timings.phase("write"):
            file_name = name.mod_list_file().name
            (self.directory / file_name).write_bytes(text)
        self.written.append(file_name)


def save_set(measurements: MeasurementSet, out_dir: Path | str) -> list[str]:
    """Write a whole set (JSON, NPZ and module lists of every rank) atomically into ``out_dir``."""
    with staged_directory(out_dir) as stage:
        writer = SetWriter(stage)
        encoders: Encoders | None = None
        for f in measurements.files:
            if encoders is None or encoders.layout != f.layout:
                encoders = Encoders(f.layout)
            writer.write(f.name, f.header, f.layout, f.values, encoders)
            names = measurements.mod_lists.get(f.rank)
            if names is not None:
                writer.write_mod_list(f.name, names)
        return list(writer.written)
