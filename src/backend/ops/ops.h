#pragma once
// Every op the model layer uses; each is declared in its own header.
#include "backend/ops/add.h"
#include "backend/ops/attention.h"
#include "backend/ops/embedding.h"
#include "backend/ops/linear.h"
#include "backend/ops/linear_q.h"
#include "backend/ops/paged_attention.h"
#include "backend/ops/rms_norm.h"
#include "backend/ops/rope.h"
#include "backend/ops/silu_mul.h"
#include "backend/ops/write_kv_cache.h"
