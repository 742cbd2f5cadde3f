"""More than one box: the ``bcaudio serve`` application as a Ray Serve deployment (the ``fleet`` extra).

mailbox  carries each client's messages from the ingress to the replica that holds its conversation
replica  a model replica: the package loaded once, conversations run as in ``bcaudio serve``
ingress  the client-facing app: the kiosk page and the realtime WebSocket, relayed to a replica
deploy   the Ray Serve application (replicas, autoscaling, limits) and starting it
metrics  bcaudio's counters as Ray metrics, so one Prometheus view covers every replica
"""
