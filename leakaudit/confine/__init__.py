"""Untrusted models run confined: one worker process holds the model, the audit talks to it over pipes.

``session`` is the parent's handle (the confined worker, or the same interface
in-process, ``inprocess``); ``checkpoints`` writes what the worker sends back
to be saved; ``worker`` is the child's main loop; ``operations`` the table of
what the worker can be asked to do; ``channel`` the framing; ``landlock``,
``seccomp`` and ``limits`` the confinement; ``watchdog`` when a silent worker
is stopped; ``relay`` carries checkpoints and progress across the pipe.
"""
