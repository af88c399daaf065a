// Anchor for the torch precompiled header target.
#include "common/torch_pch.h"
