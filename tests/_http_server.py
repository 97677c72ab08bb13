"""A test server process: the saved tiny model behind HttpSettings from the command line.

Usage: python tests/_http_server.py MODEL_DIR PORT '{"max_open_streams": 2, ...}'
(``specdec serve --http`` covers the default settings; this covers custom limits.)
"""

import json
import sys

from specdec import SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.models import load_model
from specdec.streaming.http import HttpSettings, run_server


def main() -> int:
    model_dir, port, settings = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    model, tokenizer = load_model(model_dir, dtype="float32", device="cpu", quiet=True)
    generator = SpeculativeGenerator(model, NGramDrafter(num_draft_tokens=4))
    settings.setdefault("model_name", "tiny")
    return run_server(f"127.0.0.1:{port}", generator, tokenizer, settings=HttpSettings(**settings))


if __name__ == "__main__":
    sys.exit(main())
