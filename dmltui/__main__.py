from dmltui.main import main

main()
