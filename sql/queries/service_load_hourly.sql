-- Service load by hour of day (lake `metric_events`): mean and peak requests/s, worst
-- p95 latency, mean CPU, and minutes whose latency tail was skewed. Means are taken over
-- fixed-point sums, so the result does not depend on the order rows are added in.
SELECT service,
       CAST(date_part('hour', ts) AS INT) AS hour_of_day,
       round(CAST(sum(CAST(round(requests_per_s * 1000) AS BIGINT)) AS DOUBLE) / count(*) / 1000, 1) AS avg_rps,
       round(max(requests_per_s), 1) AS peak_rps,
       round(max(latency_p95_ms), 1) AS max_p95_ms,
       round(CAST(sum(CAST(round(cpu * 100000) AS BIGINT)) AS DOUBLE) / count(*) / 100000, 3) AS avg_cpu,
       sum(CASE WHEN latency_skewed THEN 1 ELSE 0 END) AS skewed_minutes
FROM metric_events
GROUP BY 1, 2
ORDER BY 1, 2
