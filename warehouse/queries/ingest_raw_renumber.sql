-- The k-th line read is physical line k + (number of unreadable lines before it). With the unreadable
-- lines s_1 < s_2 < ..., line k follows s_j exactly when s_j - j < k: an ASOF join finds the largest such j.
create or replace temp table raw_lines as
with skipped as (
    select line - row_number() over (order by line) as threshold, row_number() over (order by line) as j
    from (select distinct line from raw_rejects)
),
steps as (select threshold, max(j) as j from skipped group by threshold)
select r.scan_no, r.scan_no + coalesce(s.j, 0) as line_number, r.blank
from raw_lines r asof left join steps s on r.scan_no > s.threshold;
