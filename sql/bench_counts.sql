-- What a bench round wrote: rows of the three tables.
SELECT (SELECT count(*) FROM spans),
       (SELECT count(*) FROM span_events),
       (SELECT count(*) FROM traces)
