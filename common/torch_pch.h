// The one precompiled header for LibTorch. Targets that need torch link fl_torch_pch and reuse it.
#pragma once
#include <torch/nn.h>
#include <torch/optim.h>
#include <torch/serialize.h>
#include <torch/types.h>
#include <torch/utils.h>
