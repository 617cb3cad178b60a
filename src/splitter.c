#include "splitter.h"
typedef int splitter_placeholder;
