COPY t FROM stdin;
1	2
\.
SELECT 1;
