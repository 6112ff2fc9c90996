"""The job store: schema (:mod:`db.models`), migrations, the state machine (:mod:`db.statuses`,
:mod:`db.guard`), the store (:mod:`db.store`, the only code that reads or writes job state), the
outbox (:mod:`db.outbox`) and job keys (:mod:`db.records`, :mod:`db.rekey`). No Prefect import."""
