"""The pure decision core. No I/O, no clock, no client: `decide(job, pods, observations, now)`
returns a `Plan` of ordered steps, and the same inputs always give the same plan. Policies live
in `core.policy`, helpers over raw API bodies next to them (pods, nodes, device faults, pod
templates, time formatting)."""
