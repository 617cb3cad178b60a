/* Splits SQL text into statements as psql does (placeholder until it lands). */
#ifndef MOONSHIFT_SPLITTER_H
#define MOONSHIFT_SPLITTER_H
#endif
