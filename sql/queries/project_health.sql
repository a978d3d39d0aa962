-- Project health: the latest state of every project (warehouse table `projects`) with
-- budget burn, schedule slip, open work (warehouse table `tasks`) and a traffic light
-- (red: overspent or late by more than 15% of plan; amber: by more than 5%).
SELECT p.project_id,
       p.status,
       p.team_size,
       round(p.budget_used, 3) AS budget_used,
       round(p.schedule_slip, 3) AS schedule_slip,
       p.scope_changes,
       p.churn,
       coalesce(t.open_tasks, 0) AS open_tasks,
       coalesce(t.done_tasks, 0) AS done_tasks,
       CASE
           WHEN p.budget_used > p.planned_progress + 0.15 OR p.schedule_slip > 0.15 THEN 'red'
           WHEN p.budget_used > p.planned_progress + 0.05 OR p.schedule_slip > 0.05 THEN 'amber'
           ELSE 'green'
       END AS health
FROM projects p
LEFT JOIN (
    SELECT project_id,
           sum(CASE WHEN status <> 'done' THEN 1 ELSE 0 END) AS open_tasks,
           sum(CASE WHEN status = 'done' THEN 1 ELSE 0 END) AS done_tasks
    FROM tasks
    GROUP BY project_id
) t USING (project_id)
ORDER BY p.project_id
