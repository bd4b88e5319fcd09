"""Policies of the decision core, one concern per module, each a set of pure functions:

- `failures`: what counts as a failing worker, its root cause, and the action rules give it.
- `devices`: Ascend device faults: which chips a fault touches, the window around an exit, late
  reports that turn a counted restart into a device fault, and when an avoided node is let back.
- `restart`: the restart budget, backoff and refund; restarting or failing the job.
- `success`: when an attempt has ended, and when the job has succeeded.
- `progress`: checkpoints seen by the controller, and hangs.
- `startup`: creating an attempt after the backoff, and when it counts as running.
- `conditions`: the status conditions each transition sets.
"""
