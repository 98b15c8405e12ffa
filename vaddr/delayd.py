"""`python -m vaddr.delayd QUEUE LINKS_PIN [GEN_PIN]`: one delay line process
(the C code in delayline.c, run through ctypes so that no separate executable
has to be installed).  Started and stopped by vaddr.delaylines."""
import ctypes
import os
import sys


def main():
    queue, pin = int(sys.argv[1]), sys.argv[2]
    gen_pin = sys.argv[3] if len(sys.argv) > 3 else ""
    here = os.path.dirname(os.path.abspath(__file__))
    built = [n for n in os.listdir(here) if n.startswith("_delayline") and n.endswith(".so")]
    if not built:
        sys.exit("vaddr: the delay line is not built (fix: run make setup or pip install .)")
    lib = ctypes.CDLL(os.path.join(here, built[0]))
    lib.vaddr_delayline_run.restype = ctypes.c_long
    err = -lib.vaddr_delayline_run(queue, pin.encode(), gen_pin.encode())
    sys.exit(f"vaddr: the delay line stopped: {os.strerror(err)}")


if __name__ == "__main__":
    main()
