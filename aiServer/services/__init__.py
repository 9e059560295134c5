"""The daemon's lifecycle as small Twisted services, composed by ``aiServer.service.make_service``.

Each service here has one job (a port, the warm-up, the self-check, the drain, ...);
``ordered.OrderedServices`` starts them in order and stops them in reverse, one after
the other, and ``ordered.Milestone`` gates a service on an earlier one's asynchronous
start (the TCP listener opens only once the self-check has passed).
"""
