// Near miss for the softmax recomposition: exp(x - max) is also returned, so the
// decomposed softmax must stay decomposed (folding it would drop a needed value).
module {
  func.func @main(%arg0: !torch.vtensor<[2,5],f32>) -> (!torch.vtensor<[2,5],f32>, !torch.vtensor<[2,5],f32>) {
    %int-1 = torch.constant.int -1
    %true = torch.constant.bool true
    %none = torch.constant.none
    %float1 = torch.constant.float 1.000000e+00
    %values, %indices = torch.aten.max.dim %arg0, %int-1, %true : !torch.vtensor<[2,5],f32>, !torch.int, !torch.bool -> !torch.vtensor<[2,1],f32>, !torch.vtensor<[2,1],si64>
    %sub = torch.aten.sub.Tensor %arg0, %values, %float1 : !torch.vtensor<[2,5],f32>, !torch.vtensor<[2,1],f32>, !torch.float -> !torch.vtensor<[2,5],f32>
    %exp = torch.aten.exp %sub : !torch.vtensor<[2,5],f32> -> !torch.vtensor<[2,5],f32>
    %dims = torch.prim.ListConstruct %int-1 : (!torch.int) -> !torch.list<int>
    %sum = torch.aten.sum.dim_IntList %exp, %dims, %true, %none : !torch.vtensor<[2,5],f32>, !torch.list<int>, !torch.bool, !torch.none -> !torch.vtensor<[2,1],f32>
    %sm = torch.aten.div.Tensor %exp, %sum : !torch.vtensor<[2,5],f32>, !torch.vtensor<[2,1],f32> -> !torch.vtensor<[2,5],f32>
    return %sm, %exp : !torch.vtensor<[2,5],f32>, !torch.vtensor<[2,5],f32>
  }
}
