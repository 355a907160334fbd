"""Print the README's two set-up commands (the first fenced block), one per line.

CI runs exactly these, so the README and CI cannot drift apart: if the block does not
hold exactly two commands, this fails and so does CI.
"""

import re
import sys
from pathlib import Path

text = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text(encoding="utf-8")
match = re.search(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S)
if not match:
    sys.exit("README.md has no fenced code block with the set-up commands")
commands = [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.startswith("#")]
if len(commands) != 2:
    sys.exit(f"README.md's first code block must hold exactly 2 commands, found {len(commands)}: {commands}")
if "pytest" not in commands[1]:
    sys.exit(f"the second README command must run the tests, got: {commands[1]}")
print("\n".join(commands))
