"""The lifecycle steps: plain functions, and the thin Prefect tasks over them.

* :mod:`tasks.steps`: each step as a plain function (discover, insert, configure, claim,
  pre-process, run the container, post-process, publish), callable and testable without Prefect;
* :mod:`tasks.lifecycle`: the Prefect tasks, one per step, adding run ids and the run logger;
* :mod:`tasks.storage`: input listing (with the objects it rejects), staging and uploads;
* :mod:`tasks.publication`: publication sinks (file, AMQP) and the outbox sender;
* :mod:`tasks.runners`: how the processing runs (local subprocess, Docker container);
* :mod:`tasks.launcher`: the launcher's Prefect side (flow runs per job on its flavor's pool,
  launched jobs checked against their flow runs); the admission itself is :mod:`db.launcher`;
* :mod:`tasks.maintenance`, :mod:`tasks.heartbeat`, :mod:`tasks.retry`: leases, rescues,
  backoff; :mod:`tasks.progress`: a run's progress artifact; :mod:`tasks.results`: what steps
  store as job metadata and hand to each other.
"""
