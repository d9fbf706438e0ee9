"""Under torchrun: hydra-pretrain with comm_checker installed; each rank writes its report to
$COMM_RULE_REPORT.<rank>.json at exit."""
import atexit
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comm_checker import install  # noqa: E402

REPORT: dict = {}
install(REPORT)
atexit.register(lambda: Path(f"{os.environ['COMM_RULE_REPORT']}.{os.environ['RANK']}.json")
                .write_text(json.dumps(REPORT)))

from hydra_dist.cli.pretrain import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
