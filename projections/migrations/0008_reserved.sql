-- A placeholder: number 0008 belongs to another branch of issue 14 (the caps), which lands its own
-- 0008 migration. Migrations are numbered 1..n without gaps (projections.migrate), so this branch
-- holds the number until then: at the merge, this file is deleted for the real 0008.
SELECT 1;
