"""The CNI plugin side of weir: the protocol, and later the plugin itself.

``spec`` is the CNI specification as values (versions, error codes, the one error type, network
configuration, results, CNI_ARGS); ``skel`` is the whole plugin protocol as one pure function,
``dispatch(env, stdin, handlers) -> (stdout, exit_code)``.

This package ships as a standalone zipapp that a container runtime executes once per pod
sandbox, so it imports only the Python standard library (import-linter checks it) and keeps
module-level imports few. It must not know about iptables, netns, Kubernetes clients or the
node agent's internals: the plugin forwards to the agent over a small wire format.
"""
