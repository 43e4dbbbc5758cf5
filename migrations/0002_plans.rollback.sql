DROP TABLE plan_meters;
DROP FUNCTION plan_meters_guard_published();
DROP TABLE plans;
DROP FUNCTION plans_guard_published();
DROP TABLE meters;
