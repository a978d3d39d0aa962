-- Current state of every project and task, upserted by the project_events and task_events
-- pipelines (pipelines/*.yaml). Portable SQL: the same file runs on SQLite and PostgreSQL.
CREATE TABLE projects (
    project_id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL,
    project_name TEXT NOT NULL,
    team_id TEXT NOT NULL,
    team_size BIGINT NOT NULL,
    start_date DATE NOT NULL,
    deadline TIMESTAMPTZ NOT NULL,
    budget DOUBLE PRECISION NOT NULL,
    spent DOUBLE PRECISION NOT NULL,
    planned_progress DOUBLE PRECISION NOT NULL,
    actual_progress DOUBLE PRECISION NOT NULL,
    scope_changes BIGINT NOT NULL,
    churn BIGINT NOT NULL,
    missed_deadline BOOLEAN,
    over_budget BOOLEAN,
    delay_days DOUBLE PRECISION,
    budget_used DOUBLE PRECISION,
    burn_rate DOUBLE PRECISION,
    schedule_slip DOUBLE PRECISION
);

CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    project_id TEXT NOT NULL,
    status TEXT NOT NULL,
    prev_status TEXT,
    task_type TEXT NOT NULL,
    complexity BIGINT NOT NULL,
    estimate_hours DOUBLE PRECISION NOT NULL,
    hours DOUBLE PRECISION,
    assignee_id TEXT,
    assignee_experience_years DOUBLE PRECISION,
    estimate_error DOUBLE PRECISION,
    effort_ratio DOUBLE PRECISION
);

CREATE INDEX tasks_project_id ON tasks (project_id);
