"""Which full fine-tunes hold an engine: the pool's order of precedence, and its bound."""

from llama_stack_scalarlm.engine.pool import FullFinetune, plan_engines


def job(job_id, created, training=False, trained=True, base="tiny", updated=None):
    return FullFinetune(job_id, base, created, created if updated is None else updated, training, trained)


def test_no_full_finetunes_no_engines_and_a_spare_only_when_asked_for():
    plan = plan_engines([], set(), {}, limit=2, spare=True)
    assert plan.jobs == {} and plan.spare is None
    assert plan_engines([], set(), {}, limit=2, spare=True, spare_fallback="tiny").spare == "tiny"


def test_training_jobs_come_first_newest_first_then_the_spare():
    jobs = [job("job-a", 1, training=True, trained=False), job("job-b", 2, training=True, trained=False),
            job("job-old", 0)]
    plan = plan_engines(jobs, set(), {}, limit=3, spare=True)
    assert list(plan.jobs) == ["job-b", "job-a"] and plan.spare == "tiny"
    plan = plan_engines(jobs, set(), {}, limit=2, spare=True)
    assert list(plan.jobs) == ["job-b", "job-a"] and plan.spare is None


def test_a_job_with_requests_waiting_outranks_the_spare_and_idle_jobs():
    jobs = [job("job-a", 1), job("job-b", 2), job("job-c", 3)]
    plan = plan_engines(jobs, {"job-a"}, {}, limit=2, spare=True)
    assert list(plan.jobs) == ["job-a"] and plan.spare == "tiny"


def test_requests_waiting_outrank_engines_standing_by_for_training_jobs():
    jobs = [job("job-asked", 1), job("job-queued", 2, training=True, trained=False),
            job("job-training", 3, training=True, trained=True)]
    plan = plan_engines(jobs, {"job-asked"}, {}, limit=2, spare=True)
    assert list(plan.jobs) == ["job-asked", "job-training"] and plan.spare is None


def test_idle_jobs_keep_engines_most_recently_used_first():
    jobs = [job("job-a", 1), job("job-b", 2), job("job-c", 3)]
    plan = plan_engines(jobs, set(), {"job-a": 100.0}, limit=3, spare=True)
    assert list(plan.jobs) == ["job-a", "job-c"] and plan.spare == "tiny"
    plan = plan_engines(jobs, set(), {"job-a": 100.0}, limit=3, spare=False)
    assert list(plan.jobs) == ["job-a", "job-c", "job-b"]


def test_the_spare_stands_by_on_the_newest_jobs_base_model():
    jobs = [job("job-a", 1, base="small"), job("job-b", 2, base="tiny", trained=False, training=True)]
    assert plan_engines(jobs, set(), {}, limit=3, spare=True).spare == "tiny"


def test_jobs_with_nothing_to_serve_and_no_training_get_nothing():
    jobs = [job("job-failed", 1, training=False, trained=False)]
    plan = plan_engines(jobs, set(), {}, limit=2, spare=True)
    assert plan.jobs == {}
