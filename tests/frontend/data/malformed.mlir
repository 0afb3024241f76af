// Truncated/invalid text: the parser error must come back as MlirImportError naming the file.
module {
  func.func @main(%arg0: !torch.vtensor<[2,3],f32>) -> !torch.vtensor<[2,3],f32> {
    %0 = torch.aten.relu %arg0 : !torch.vtensor<[2,3],f32> ->
    return %0 : !torch.vtensor<[2,3],f32>
