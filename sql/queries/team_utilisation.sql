-- Resource utilisation per team: hours logged on finished tasks (lake `task_events`)
-- against their estimates, per person and per person-day with logged work, each task
-- joined to its project's team (warehouse `projects`). Hours are summed as whole
-- hundredths, so the result does not depend on the order rows are added in.
SELECT p.team_id,
       count(DISTINCT t.assignee_id) AS people,
       count(*) AS tasks_done,
       round(CAST(sum(CAST(round(t.hours * 100) AS BIGINT)) AS DOUBLE) / 100, 1) AS hours_logged,
       round(CAST(sum(CAST(round(t.estimate_hours * 100) AS BIGINT)) AS DOUBLE) / 100, 1) AS hours_estimated,
       round(CAST(sum(CAST(round(t.hours * 100) AS BIGINT)) AS DOUBLE)
             / sum(CAST(round(t.estimate_hours * 100) AS BIGINT)), 3) AS effort_ratio,
       round(CAST(sum(CAST(round(t.hours * 100) AS BIGINT)) AS DOUBLE) / 100
             / count(DISTINCT t.assignee_id), 1) AS hours_per_person,
       round(CAST(sum(CAST(round(t.hours * 100) AS BIGINT)) AS DOUBLE) / 100
             / count(DISTINCT t.assignee_id || '/' || CAST(CAST(t.ts AS DATE) AS VARCHAR)), 2) AS hours_per_person_day
FROM task_events t
JOIN projects p USING (project_id)
WHERE t.status = 'done' AND t.hours IS NOT NULL
GROUP BY p.team_id
ORDER BY p.team_id
