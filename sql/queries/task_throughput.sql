-- Task throughput and cycle time per day (lake table `task_events`): tasks finished that
-- day, and the median and longest time from first `in_progress` to `done`, in hours.
WITH spans AS (
    SELECT task_id,
           min(CASE WHEN status = 'in_progress' THEN ts END) AS started,
           max(CASE WHEN status = 'done' THEN ts END) AS finished
    FROM task_events
    GROUP BY task_id
)
SELECT CAST(finished AS DATE) AS day,
       count(*) AS tasks_done,
       round(median((date_part('epoch', finished) - date_part('epoch', started)) / 3600.0), 2) AS median_cycle_hours,
       round(max((date_part('epoch', finished) - date_part('epoch', started)) / 3600.0), 2) AS max_cycle_hours
FROM spans
WHERE started IS NOT NULL AND finished IS NOT NULL
GROUP BY 1
ORDER BY 1
