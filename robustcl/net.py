"""Local networking for processes robustcl starts: servers, TensorBoard, tf.distribute clusters."""

import socket


def free_ports(n=1, host="127.0.0.1"):
    """n distinct free TCP ports on `host` (all bound at once, so none is given twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
