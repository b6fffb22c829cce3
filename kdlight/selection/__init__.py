"""Data selection under a teacher budget (BalDistill's parts): stage budgets and domain quotas,
IFD ranking, the teacher that annotates and synthesises (a local model or stored outputs), and the
budget ledger. The stage loop that uses them is `kdlight.pipelines.baldistill`."""
