"""Remote database updates (desired `databases`): new DBCs over the air, verified, swapped live,
rolled back on harm. docs/remote-databases.md describes it from the cloud's side.

    desired `databases` ─► document (validated) ─► updater: download (agent.download) ─► versions
    (content store, one folder of names per version) ─► probe (a child process, bounded) ─►
    DesiredState.activate_databases (the live apply_config) ─► watch ─► known-good | rollback
"""
