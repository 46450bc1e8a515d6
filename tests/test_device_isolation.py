"""Only pmg_models/runtime.py may name a device or set MindSpore's device context."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"device_target|set_device\(|\.cuda\(|[\"']Ascend[\"']|[\"']GPU[\"']")


def test_device_names_only_in_runtime():
    offenders = []
    for pkg in ("pmg_models", "flows", "tasks", "warehouse"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() == "pmg_models/runtime.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if PATTERN.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "device chosen outside runtime.py:\n" + "\n".join(offenders)


def test_no_mint_in_model_code():
    hits = [p for p in (ROOT / "pmg_models").rglob("*.py") if re.search(r"\bmint\.", p.read_text())]
    assert not hits, f"mindspore.mint has no CPU kernels for most ops: {hits}"
