"""The floor of one extra process hop: spawn a command and copy bytes both ways without parsing them.

    python bench/relay.py CMD [ARGS...]

Two threads copy whatever arrives (stdin -> child, child -> stdout) in the chunks the kernel hands over.
No JSON parsing, no line splitting: this is what any stdio proxy costs before it looks at a message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading


def pump(src: int, dst: int) -> None:
    try:
        while chunk := os.read(src, 1 << 16):
            view = memoryview(chunk)
            while view:
                n = os.write(dst, view)
                view = view[n:]
    except OSError:
        pass


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: relay.py CMD [ARGS...]", file=sys.stderr)
        return 2
    child = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None
    assert child.stdout is not None
    down = threading.Thread(target=pump, args=(child.stdout.fileno(), sys.stdout.fileno()), daemon=True)
    down.start()
    pump(sys.stdin.fileno(), child.stdin.fileno())  # until the client closes our stdin
    child.stdin.close()
    try:
        return child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.terminate()
        return child.wait()
    finally:
        down.join(timeout=2)


if __name__ == "__main__":
    sys.exit(main())
