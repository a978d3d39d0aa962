-- Service load by hour of day (lake `metric_events`): mean and peak requests/s, worst
-- p95 latency, mean CPU, and minutes whose latency tail was skewed.
SELECT service,
       CAST(date_part('hour', ts) AS INT) AS hour_of_day,
       round(avg(requests_per_s), 1) AS avg_rps,
       round(max(requests_per_s), 1) AS peak_rps,
       round(max(latency_p95_ms), 1) AS max_p95_ms,
       round(avg(cpu), 3) AS avg_cpu,
       sum(CASE WHEN latency_skewed THEN 1 ELSE 0 END) AS skewed_minutes
FROM metric_events
GROUP BY 1, 2
ORDER BY 1, 2
