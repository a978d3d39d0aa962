-- Dead letters by pipeline, stage and error (lake DLQ table of task_events, plus rows
-- warehouse constraints refused), with the source positions they came from.
SELECT ymera_pipeline AS pipeline,
       ymera_error_stage AS stage,
       ymera_error_message AS error,
       count(*) AS records,
       min(ymera_source_offset) AS first_offset,
       max(ymera_source_offset) AS last_offset
FROM (
    SELECT ymera_pipeline, ymera_error_stage, ymera_error_message, ymera_source_offset FROM dlq_task_events
    UNION ALL
    SELECT ymera_pipeline, ymera_error_stage, ymera_error_message, ymera_source_offset FROM _ymera_dead_letters
) d
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
